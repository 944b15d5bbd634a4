"""Web dashboards over the sweeps' MLflow runs (Pareto-front browser, side-by-side attributions)."""

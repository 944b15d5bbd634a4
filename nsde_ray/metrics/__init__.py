"""Attribution-quality metrics: sensitivity, localisation, saturation, faithfulness, PIC (SIC / AIC)."""

# The MLflow tracking server of the compose stack: PostgreSQL backend store (psycopg2), S3/MinIO artifact
# store (boto3), the same MLflow version as the nsde-ray image. Runs as an unprivileged user.
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.8

RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
        "boto3==${BOTO3_VERSION}" \
    && useradd --create-home --uid 1000 mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000

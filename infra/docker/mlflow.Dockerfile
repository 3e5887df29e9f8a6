# MLflow tracking server + registry with a Postgres backend and S3 artifacts (the compose `mlflow`).
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.11 boto3==1.43.117

# syntax=docker/dockerfile:1
# The MLflow tracking server of deploy/kuberay/mlflow.yaml: the same MLflow as the package
# (constraints.txt pins mlflow==3.17.2, with its basic-auth extra), a PostgreSQL driver for the backend store, boto3 for an
# s3 artifact destination. Nothing is copied in, so the build context can be this folder:
#   docker build -f deploy/docker/mlflow.Dockerfile -t registry.example.com/ctplatform/ctplatform-mlflow:3.17.2 deploy/docker
FROM python:3.11-slim

RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.5" \
    && useradd --create-home --uid 1000 mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
CMD ["--host=0.0.0.0", "--port=5000"]

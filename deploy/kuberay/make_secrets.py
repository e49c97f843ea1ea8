"""Generate the cluster's secrets into deploy/kuberay/secrets/ (git-ignored), once, before
`kubectl apply -k deploy/kuberay`; kustomize's secretGenerator turns them into Secrets. Nothing
secret is committed: without these files `kubectl apply -k` stops with "no such file".

    python deploy/kuberay/make_secrets.py            # refuses to overwrite existing secrets
    python deploy/kuberay/make_secrets.py --force    # new ones (then restart postgres/mlflow/redis)

Files: mlflow-db.env (PostgreSQL password and MLflow's backend-store URL), mlflow-auth.env (the
Flask secret key of MLflow's basic-auth app), basic_auth.ini (its admin user and database),
mlflow-client.env (the user Ray pods log in as), redis.env (the GCS fault-tolerance store's password).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRETS = HERE / "secrets"
#: Where the MLflow pod keeps basic-auth's users (a subPath of its volume, outside the artifacts).
AUTH_DB = "sqlite:////var/lib/mlflow-auth/basic_auth.db"
FILES = ("mlflow-db.env", "mlflow-auth.env", "basic_auth.ini", "mlflow-client.env", "redis.env")


def token() -> str:
    """A random URL-safe value (hex: it is spliced into URLs and ini files as is)."""
    return secrets.token_hex(24)


def secret_files() -> dict[str, str]:
    """The content of every secret file, with fresh random values."""
    db, flask, admin, redis = token(), token(), token(), token()
    return {
        "mlflow-db.env": f"password={db}\nbackend-store-uri=postgresql://mlflow:{db}@postgres:5432/mlflow\n",
        "mlflow-auth.env": f"flask-secret-key={flask}\n",
        "basic_auth.ini": (
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {AUTH_DB}\n"
            "admin_username = admin\n"
            f"admin_password = {admin}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        ),
        "mlflow-client.env": f"username=admin\npassword={admin}\n",
        "redis.env": f"password={redis}\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace existing secret files")
    parser.add_argument("--out", type=Path, default=SECRETS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    existing = [f for f in FILES if (args.out / f).exists()]
    if existing and not args.force:
        print(f"{args.out}: {', '.join(existing)} exist already; --force replaces them", file=sys.stderr)
        return 1
    args.out.mkdir(mode=0o700, exist_ok=True)
    for name, text in secret_files().items():
        path = args.out / name
        path.write_text(text)
        path.chmod(0o600)
    print(f"wrote {len(FILES)} secret files to {args.out} (git-ignored); now: kubectl apply -k {HERE.relative_to(Path.cwd()) if HERE.is_relative_to(Path.cwd()) else HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

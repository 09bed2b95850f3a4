# Compliance Jobs image: the official Airflow image + the project's pinned requirements + its code.
# Used by docker-compose.yml (`build: .`); docs/deployment.md.
#
# The tag's Airflow version must equal the apache-airflow pin in requirements.txt (the build fails
# otherwise; tests/unit/test_deployment.py checks it too). Upgrade both together.
FROM apache/airflow:3.3.2-python3.11

# The base image installs Python packages as the `airflow` user (pip --user); stay that user.
USER airflow

# requirements.txt is fully pinned, apache-airflow included. Drop that line and install the rest
# next to the base image's exact Airflow version ("apache-airflow==${AIRFLOW_VERSION}", the
# upstream-recommended form), so pip can never up- or downgrade Airflow itself.
COPY --chown=airflow:0 requirements.txt /tmp/requirements.txt
RUN set -eu; \
    if ! grep -qx "apache-airflow==${AIRFLOW_VERSION}" /tmp/requirements.txt; then \
        echo "requirements.txt must pin apache-airflow==${AIRFLOW_VERSION} (the base image)" >&2; \
        exit 1; \
    fi; \
    grep -v '^apache-airflow==' /tmp/requirements.txt > /tmp/requirements-no-airflow.txt; \
    pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements-no-airflow.txt; \
    rm -f /tmp/requirements.txt /tmp/requirements-no-airflow.txt

# The package `compliance` is imported from /opt/airflow/include through PYTHONPATH, exactly as
# in docker-compose.yml (which mounts ./include over this copy for live code). It is deliberately
# not pip-installed: a second copy in site-packages could silently differ from the mounted one.
# dev/ (compliance_dev: synthetic worlds, the embedded local stack, fault injection) is deliberately
# NOT copied: it is test and demo tooling, the product never imports it, and a production image
# must not ship code that patches moto or crashes tasks on purpose. docker-compose.yml (a dev/demo
# stack) mounts ./dev and puts it on PYTHONPATH for `python -m compliance_dev world seed`.
ENV PYTHONPATH=/opt/airflow/include
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 config/ /opt/airflow/config/

# /opt/airflow/auth: SimpleAuthManager's passwords file (named volume in docker-compose.yml).
# Fail the build early if the executor's provider or the project cannot be imported.
RUN mkdir -p /opt/airflow/auth \
    && python -c "import airflow.providers.celery, airflow.providers.amazon, airflow.providers.postgres, compliance.runtime"

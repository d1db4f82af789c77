# The image of the workers, Flower and the producer: slim Python, txnbackup and Flower,
# a non-root user. Packages are installed in a build stage; the final stage gets only the
# installed files, and neither a compiler nor setuptools/wheel.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY txnbackup ./txnbackup
COPY tasks ./tasks
COPY workers ./workers
COPY txnbackup_cli ./txnbackup_cli
RUN pip install --no-cache-dir --no-compile --prefix=/install ".[flower]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
# Flower's config (readable task rows, drive progress): celery -A tasks flower --conf=...
COPY tasks/flowerconfig.py /etc/txnbackup/flowerconfig.py
RUN pip uninstall --yes --quiet setuptools wheel \
    && useradd --create-home --uid 1000 --user-group txnbackup \
    && mkdir /repository \
    && chown txnbackup:txnbackup /repository
# /repository is owned by the user, so a named volume mounted there starts out writable.
USER txnbackup
WORKDIR /home/txnbackup
ENTRYPOINT ["txnbackup"]
CMD ["--help"]

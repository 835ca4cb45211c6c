# agentaskit-dr watchdog image. Build: docker build -t agentaskit-dr .
# Run:   docker run -v /etc/agentaskit-dr:/etc/agentaskit-dr:ro agentaskit-dr
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agentaskit_dr ./agentaskit_dr
RUN python -m venv /opt/agentaskit-dr \
 && /opt/agentaskit-dr/bin/pip install --no-cache-dir .

FROM python:3.11-slim
COPY --from=build /opt/agentaskit-dr /opt/agentaskit-dr
RUN useradd --system --uid 10001 --home-dir /var/lib/agentaskit-dr --create-home agentaskit-dr
USER 10001
ENV PATH=/opt/agentaskit-dr/bin:$PATH PYTHONUNBUFFERED=1
# The API (status, /v1/observations for peers, /metrics); set api.listen to 0.0.0.0:8787
# inside a container so peers and Prometheus can reach it.
EXPOSE 8787
# /healthz answers 503 when the engine loop stops making progress.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=4).status != 200)"
# SIGTERM stops gracefully (lock released); SIGHUP reloads the config.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentaskit-dr"]
CMD ["run", "--config", "/etc/agentaskit-dr/watchdog.yaml"]

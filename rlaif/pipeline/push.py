"""Push a dataset folder written by :func:`rlaif.pipeline.dataset_writer.write_dataset` to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from rlaif.secrets import scrub_secrets

# Only the Hub layout is pushed: the optional JSONL files are a local convenience copy of the same rows.
_PUSHED = ["README.md", "data/*"]


class PushError(RuntimeError):
    """A push that failed; the message says where the data is safe on disk and how to retry, never the token."""


def push_dataset(
    dataset_dir: Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload dataset with rlaif",
    run_dir: Path | None = None,
) -> str:
    """Create the dataset repo if needed and upload the card and shards in one commit; return the commit URL.

    The token is ``token`` or huggingface_hub's own resolution (``HF_TOKEN``, then ``hf auth login``). Remote
    ``data/*`` files that this upload does not contain are deleted, so a re-push with fewer shards leaves no stale
    shard for ``data/<split>-*`` to pick up. Raises :class:`PushError` with the retry command on any failure.
    """
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "README.md").is_file() or not any((dataset_dir / "data").glob("*.parquet")):
        raise PushError(
            f"{dataset_dir} holds no dataset written by rlaif (README.md + data/*.parquet); nothing pushed"
        )
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=dataset_dir,
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=commit_message,
            allow_patterns=_PUSHED,
            delete_patterns=["data/*"],
        )
    except Exception as err:  # any failure (HTTP, network, validation) gets the same recovery advice
        raise PushError(_push_failure(err, dataset_dir, repo_id, run_dir, token)) from err
    return str(commit.commit_url)


def _push_failure(err: Exception, dataset_dir: Path, repo_id: str, run_dir: Path | None, token: str | None) -> str:
    reason = scrub_secrets(f"{type(err).__name__}: {err}", extra=[token])[:800]
    status = getattr(getattr(err, "response", None), "status_code", None)
    hint = " Check HF_TOKEN or run `hf auth login`; the token needs write access." if status in (401, 403) else ""
    return (
        f"push of {dataset_dir} to the dataset repo {repo_id} failed: {reason}\n"
        f"The data is safe on disk at {dataset_dir}.{hint}\n"
        f"Retry with: rlaif push {run_dir or dataset_dir} --repo {repo_id}"
    )

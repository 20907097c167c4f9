"""Where a user's blobs live in the adapter store; everything of a user sits under one prefix."""


def user_prefix(user_id: str) -> str:
    return f"users/{user_id}"


def adapter_key(user_id: str, adapter_id: str) -> str:
    return f"{user_prefix(user_id)}/adapters/{adapter_id}.safetensors"


def recordings_prefix(user_id: str, job_id: str) -> str:
    return f"{user_prefix(user_id)}/recordings/{job_id}"


def recording_key(user_id: str, job_id: str, position: int) -> str:
    return f"{recordings_prefix(user_id, job_id)}/{position:04d}.flac"

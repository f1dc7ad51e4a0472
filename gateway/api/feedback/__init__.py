"""POST/GET /v1/feedback: thumbs, edits and comments on completions (protocol, serving, router)."""

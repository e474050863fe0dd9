"""``poolgate feedback REQUEST_ID``: label a request through a running gateway (``POST /v1/feedback``)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("request_id")
@click.option("--score", type=float, default=None, help="quality in [0, 1]")
@click.option("--up", "thumbs", flag_value="up", default=None, help="thumbs up (score 1)")
@click.option("--down", "thumbs", flag_value="down", help="thumbs down (score 0)")
@click.option("--comment", default=None, help="free text stored with the label")
@click.option("--labeler", default=None, help="who labels (a person, a grader's name)")
@click.option("--url", envvar="POOLGATE_BASE_URL", default=None,
              help="gateway base URL, as the SDK reads it [POOLGATE_BASE_URL, else http://POOLGATE_HOST:POOLGATE_PORT]")
@click.option("--api-key", envvar="POOLGATE_API_KEY", default=None,
              help="API key, as the SDK reads it [POOLGATE_API_KEY, else POOLGATE_MASTER_KEY]")
def feedback(request_id: str, score: float | None, thumbs: str | None, comment: str | None, labeler: str | None,
             url: str | None, api_key: str | None) -> None:
    """Give REQUEST_ID (its x-poolgate-request-id header) a score or a thumbs up/down; again = update."""
    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    import httpx

    # why: `poolgate --help` imports every command module; this one's dependencies load only when it runs
    from gateway.settings import Settings

    if (score is None) == (thumbs is None):
        raise click.UsageError("give exactly one of --score, --up or --down")
    settings = Settings()
    base = (url or f"http://{settings.host}:{settings.port}").rstrip("/")
    base = base[:-3] if base.endswith("/v1") else base  # the SDK accepts either form of the root
    api_key = api_key or settings.master_key
    body: dict[str, object] = {"request_id": request_id}
    body.update({"score": score} if score is not None else {"thumbs": thumbs})
    body.update({k: v for k, v in (("comment", comment), ("labeler", labeler)) if v is not None})
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.post(f"{base}/v1/feedback", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the gateway at {base}: {exc}") from None
    try:
        data = resp.json()
    except json.JSONDecodeError:
        raise click.ClickException(f"HTTP {resp.status_code} from {base}: {resp.text[:300]}") from None
    if resp.status_code >= 400:
        message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        raise click.ClickException(f"HTTP {resp.status_code}: {message or resp.text[:300]}")
    verb = "recorded" if data.get("created") else "updated"
    click.echo(f"{verb}: request {data['request_id']} score {data['score']}"
               + (f" ({data['comment']})" if data.get("comment") else ""))

"""``snapshot_download`` from our hub (the Hugging Face protocol) vs our own signed-link route, same run.

A hub (``llamahub hub serve``, its own process on 127.0.0.1) serves ``llama-debug-big-1g`` (about
1 GB in bf16, imported from Meta's layout, so the hub also holds the HF layout converted at
import). This process is the client; both share the machine's cores. Per run (``--runs``, median
reported; MB = 10^6 bytes), each into an empty cache:

- link: ``llamahub download`` in-process (gates, signed link, manifest, the download engine with
  sha256 verification, the cache), Meta's layout;
- hf-original: ``huggingface_hub.snapshot_download`` of the repo's ``original/*`` (the very same
  Meta files through ``/resolve/``), into the HF cache; the client checks sizes only;
- hf: ``snapshot_download`` of the HF layout (safetensors), as ``from_pretrained`` fetches it;
- the ceiling: the client's own body loop, ``huggingface_hub.file_download.http_get`` into a
  file, for the largest file of ``original/`` (hf-original runs one such loop per file), from
  the hub's ``/resolve/`` URL (with the token) and from Debian's nginx serving the same blob as a
  static file (sendfile on, one process, started here in a temporary folder on 127.0.0.1). What
  the unmodified client takes from nginx is what it can take from any server; the row is skipped,
  with a note, if nginx is not installed (``apt-get install nginx-light``).

    .venv/bin/python bench/bench_hf.py
    .venv/bin/python bench/bench_hf.py --runs 1 --variant llama-debug-big-25m --work /tmp/w --out-dir /tmp/hf
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_download import HERE, Meter, new_account, prepare_hub, via_llamahub
from bench_hub import MB, Server, free_port, log, machine_info, summary

VARIANT = "llama-debug-big-1g"
TARGET = 0.9  # the HF path should not be slower than 0.9x the link route


def via_hf(server: Server, token: str, variant: str, work: Path, *, original: bool) -> dict[str, Any]:
    import huggingface_hub

    patterns = {"allow_patterns": ["original/*"]} if original else {"ignore_patterns": ["original/*"]}
    with tempfile.TemporaryDirectory(dir=work) as cache:
        with Meter(server, resource.RUSAGE_SELF) as m:
            folder = huggingface_hub.snapshot_download(
                f"llamahub/{variant}", endpoint=server.url, token=token, cache_dir=cache, max_workers=8,
                **patterns)
        sizes = [p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()]
    total = sum(sizes)
    return {"seconds": m.seconds, "bytes": total, "MBps": total / MB / m.seconds,
            "client_cpu": m.client_cpu, "hub_cpu": m.hub_cpu, "files": len(sizes),
            "large": sorted(n for n in sizes if n >= total / 8)}


NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")  # root's PATH may lack sbin


class StaticNginx:
    """Debian's nginx serving the files of ``root`` on 127.0.0.1: one process (no master, so its CPU
    is this process's), sendfile on, as a plain static file server is set up."""

    def __init__(self, nginx: str, root: Path, conf_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        temp = " ".join(f"{k}_temp_path {conf_dir / k};" for k in ("client_body", "proxy", "fastcgi",
                                                                      "uwsgi", "scgi"))
        conf = conf_dir / "nginx.conf"
        conf.write_text(
            f"daemon off; master_process off; {'user root;' if os.geteuid() == 0 else ''} "
            f"pid {conf_dir / 'nginx.pid'}; error_log {conf_dir / 'error.log'};\n"
            f"events {{}}\nhttp {{ access_log off; sendfile on; tcp_nopush on; {temp}\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {root}; location / {{}} }} }}\n")
        self.proc = subprocess.Popen([nginx, "-p", str(conf_dir), "-c", str(conf)], stderr=subprocess.PIPE)
        for _ in range(200):
            if self.proc.poll() is not None:
                sys.exit(f"nginx exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            try:
                httpx.get(self.url, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        sys.exit("nginx did not answer within 10 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def nginx_version() -> str | None:
    if not NGINX:
        return None
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().rpartition("/")[2] or None  # "nginx version: nginx/1.22.1"


def largest_original(server: Server, variant: str) -> dict[str, Any]:
    """The repo's largest file under ``original/`` (path, size, sha256), from the repo info."""
    info = httpx.get(f"{server.url}/api/models/llamahub/{variant}", timeout=30).json()
    f = max((f for f in info["siblings"] if f["rfilename"].startswith("original/")), key=lambda f: f["size"])
    return {"path": f["rfilename"], "size": f["size"], "sha256": f["lfs"]["sha256"]}


def via_http_get(server: Server | StaticNginx, url: str, token: str, size: int, work: Path) -> dict[str, Any]:
    """``http_get`` (huggingface_hub's body loop: one GET, iter_bytes, file writes) of ``url`` into a
    file, with the headers ``hf_hub_download`` sends (token, user agent)."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token)
    with tempfile.NamedTemporaryFile(dir=work) as out:
        with Meter(server, resource.RUSAGE_SELF) as m:  # type: ignore[arg-type]
            http_get(url, out, headers=headers, expected_size=size)
        got = out.tell()
    if got != size:
        sys.exit(f"http_get of {url} wrote {got:,} bytes, not {size:,}")
    return {"seconds": m.seconds, "bytes": size, "MBps": size / MB / m.seconds,
            "client_cpu": m.client_cpu, "hub_cpu": m.hub_cpu}


def layout(r: dict[str, Any]) -> str:
    """``: 4 × 253 MB of 10 files``: how a snapshot's bytes are split (one stream per file)."""
    if "files" not in r:
        return ""
    large = r["large"]
    sizes = f"{len(large)} × {large[0] / MB:,.0f} MB" if len(set(large)) == 1 else \
        " + ".join(f"{n / MB:,.0f}" for n in large) + " MB"
    return f": {sizes} of {r['files']} files"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Hugging Face protocol vs signed links, from a local hub", "",
        "Generated by `bench/bench_hf.py`; do not edit by hand.", "",
        f"- Machine: {m['cpu']}, {m['nproc']} cores; Python {m['python']}, huggingface_hub "
        f"{r['huggingface_hub']}; llamahub {m['git']}; {r['date']}.",
        f"- Variant {r['variant']}, imported in Meta's layout; hub and client on the same machine over "
        "127.0.0.1. Each client starts from an empty cache.",
        f"- Median (min–max) of {r['runs']} runs. Command: `{r['command']}`", "",
        "| client | MB | seconds | MB/s | ÷ link | client CPU s | hub (or nginx) CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    base = r["link"]["MBps"]["median"]
    big = r["ceiling"]["file"]
    rows = [("llamahub download (signed link, sha256 verified)", "link"),
            (f"snapshot_download, `original/*` (the same Meta files{layout(r['hf_original'])})",
             "hf_original"),
            (f"snapshot_download, HF layout (safetensors{layout(r['hf'])})", "hf"),
            (f"`http_get` of `{big['path']}` from the hub's `/resolve/`", "get_hub"),
            (f"`http_get` of `{big['path']}` from nginx (a static file, sendfile)", "get_nginx")]
    for name, key in rows:
        if r.get(key) is None:
            continue
        s, t = r[key]["MBps"], r[key]["seconds"]
        lines.append(f"| {name} | {r[key]['bytes'] / MB:,.0f} | "
                     f"{t['median']:.2f} ({t['min']:.2f}–{t['max']:.2f})"
                     f" | {s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f}) | {s['median'] / base:.2f}× | "
                     f"{r[key]['client_cpu']['median']:.2f} | {r[key]['hub_cpu']['median']:.2f} |")
    ratio = r["hf_original"]["MBps"]["median"] / base
    lines += ["", f"Target: the HF path ≥ {TARGET}× the link route → {ratio:.2f}× "
              f"({'met' if ratio >= TARGET else 'not met'}).", "",
              f"Ceiling: `huggingface_hub.file_download.http_get`, the loop that carries every byte of "
              f"`snapshot_download` (one GET per file, `iter_bytes` in 10 MB pieces, file writes), for the "
              f"{big['size'] / MB:,.0f} MB file alone. "]
    if r.get("get_nginx") is None:
        lines[-1] += f"The nginx row is skipped: {r['ceiling']['skipped']}."
    else:
        hub, nginx = r["get_hub"]["MBps"]["median"], r["get_nginx"]["MBps"]["median"]
        pair = r["ceiling"]["hub_over_nginx"]
        lines[-1] += (f"From nginx {r['ceiling']['nginx']} (a static server that spends next to no CPU) "
                      f"the unmodified client takes {nginx:.0f} MB/s; from the hub {hub:.0f} MB/s, "
                      f"{pair['median']:.2f}× nginx within each run ({pair['min']:.2f}–{pair['max']:.2f}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default=VARIANT)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    opts = p.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    (HERE / "work").mkdir(exist_ok=True)  # the link client's home (bench_download.via_llamahub)
    os.environ |= {"LLAMAHUB_PROGRESS": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                   "HF_HUB_DISABLE_TELEMETRY": "1"}
    data = prepare_hub(opts.work, opts.variant, prefix="hf")  # imported with the HF layout converted
    server = Server(data)
    res: dict[str, list[dict[str, Any]]] = {"link": [], "hf_original": [], "hf": [], "get_hub": []}
    nginx, skipped = None, "" if NGINX else "nginx is not installed (apt-get install nginx-light)"
    with tempfile.TemporaryDirectory(dir=opts.work) as static:
        try:
            token = new_account(server.url)
            big = largest_original(server, opts.variant)
            hub_url = f"{server.url}/llamahub/{opts.variant}/resolve/main/{big['path']}"
            if NGINX:
                blob = data / "blobs" / "sha256" / big["sha256"][:2] / big["sha256"][2:]
                (Path(static) / "www").mkdir()
                (Path(static) / "www" / "big.bin").symlink_to(blob)
                nginx = StaticNginx(NGINX, Path(static) / "www", Path(static))
                res["get_nginx"] = []
            for i in range(opts.runs):
                res["link"].append(via_llamahub(server, token, opts.variant, load=False))
                res["hf_original"].append(via_hf(server, token, opts.variant, opts.work, original=True))
                res["hf"].append(via_hf(server, token, opts.variant, opts.work, original=False))
                res["get_hub"].append(via_http_get(server, hub_url, token, big["size"], opts.work))
                if nginx:
                    res["get_nginx"].append(via_http_get(nginx, f"{nginx.url}/big.bin", token, big["size"],
                                                         opts.work))
                log(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]['MBps']:.0f} MB/s" for k, v in res.items()))
        finally:
            server.stop()
            if nginx:
                nginx.stop()
    import huggingface_hub

    result = {
        "machine": machine_info(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", "bench/bench_hf.py", *sys.argv[1:]]),
        "variant": opts.variant, "runs": opts.runs, "huggingface_hub": huggingface_hub.__version__,
        "ceiling": {"file": big, "nginx": nginx_version(), "skipped": skipped,
                    "hub_over_nginx": summary([h["MBps"] / n["MBps"] for h, n in
                                               zip(res["get_hub"], res.get("get_nginx", []), strict=False)])
                    if nginx else None},
        **{k: {"bytes": v[0]["bytes"], **{key: v[0][key] for key in ("files", "large") if key in v[0]},
               **{key: summary([r[key] for r in v]) for key in ("seconds", "MBps", "client_cpu", "hub_cpu")}}
           for k, v in res.items()},
    }
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / "hf.json").write_text(json.dumps(result, indent=2) + "\n")
    (opts.out_dir / "hf.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

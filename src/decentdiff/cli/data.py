"""``decentdiff data list|show``: the data sources and what is in one."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import ConfigOpt, GridOutOpt, SetOpt, default_of, resolve_config


def data_list() -> None:
    """List the data source kinds and the embedded data sets."""
    from ..data.sources import available_sources

    rows = available_sources()
    width = max(len(spec) for spec, _ in rows)
    for spec, desc in rows:
        typer.echo(f"{spec:<{width}}  {desc}")


def data_show(
    source: Annotated[
        str, typer.Argument(help="Data source spec, e.g. mnist5k, digits, npz:FILE.")
    ],
    out: GridOutOpt = None,
    heldout: Annotated[
        float | None,
        typer.Option(
            "--heldout",
            help=f"Held-out share for the split summary. {default_of('data', 'heldout')}",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Counts, shape, classes and (with --out) a grid image of a data source."""
    import numpy as np

    from ..run import load_data

    cfg = resolve_config(None, config, set_, data=source)
    if heldout is not None:
        cfg.data.heldout = heldout
    d = load_data(cfg.data)
    typer.echo(f"source       {source}")
    typer.echo(f"images       {len(d.images)}  shape (C, H, W) = {d.shape}  dtype uint8")
    held_from = f" from {cfg.data.heldout_source}" if cfg.data.heldout_source else ""
    typer.echo(f"split        train {len(d.train_idx)}  held-out {len(d.heldout_idx)}{held_from}")
    typer.echo(f"fingerprint  {d.fingerprint[:16]}…")
    if d.labels is not None:
        counts = np.bincount(d.labels, minlength=d.num_classes)
        typer.echo(f"classes      {d.num_classes}: " + " ".join(str(int(c)) for c in counts))
    else:
        typer.echo("classes      none (unlabelled)")
    if out is not None:
        from ..viz import save_grid

        rng = np.random.default_rng(0)
        if d.labels is not None:
            idx = np.concatenate(
                [rng.permutation(np.flatnonzero(d.labels == c))[:8] for c in range(d.num_classes)]
            )
            save_grid(d.images[idx], out, nrow=8)
        else:
            save_grid(d.images[rng.permutation(len(d.images))[:64]], out, nrow=8)
        typer.echo(f"grid         {out}")

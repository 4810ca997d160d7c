"""`secmlops keys generate | id`: Ed25519 signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from secmlops.cli.common import console, current_settings, exits_on_user_error

app = typer.Typer(help="Ed25519 signing keys.", no_args_is_help=True)


@app.command("generate")
@exits_on_user_error
def keys_generate(
    name: Annotated[str, typer.Option(help="Key name: writes NAME.key and NAME.pub.")],
    out: Annotated[Path, typer.Option(help="Folder for the key files.")] = Path("keys"),
    openssf: Annotated[
        bool,
        typer.Option(
            help="An ECDSA P-256 pair instead, for OpenSSF model-signing bundles (the trainer's "
            "second key; it has no key id: the provenance names its public key)."
        ),
    ] = False,
) -> None:
    """Generate an Ed25519 key pair and print its key id (put it in the policy to trust it).

    The private key is encrypted with $SECMLOPS_KEY_PASSPHRASE when it is set.
    """
    from secmlops.supplychain.keys import generate_keypair, key_id, load_public_key

    if openssf:
        from secmlops.supplychain.openssf import generate_openssf_keypair

        private, public = generate_openssf_keypair(out, name, current_settings().key_passphrase)
        console.print(f"private key {private} (keep secret), public key {public} (ECDSA P-256)")
        return
    private, public = generate_keypair(out, name, current_settings().key_passphrase)
    console.print(f"private key {private} (keep secret), public key {public}")
    console.print(f"key id: {key_id(load_public_key(public))}")


@app.command("id")
@exits_on_user_error
def keys_id(public_key: Annotated[Path, typer.Argument(help="A .pub file.")]) -> None:
    """Print the key id of a public key (the form the policy's trusted key lists use)."""
    from secmlops.supplychain.keys import key_id, load_public_key

    print(key_id(load_public_key(public_key)))

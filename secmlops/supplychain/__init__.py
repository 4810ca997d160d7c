"""Supply-chain controls: Ed25519 keys, the trusted keyring, and DSSE signed envelopes.

Data manifests (`secmlops.data.manifest`) and model provenance statements are signed with the
same envelope, so one keyring decides what the pipeline trusts.
"""

from secmlops.supplychain.dsse import (
    VerifiedPayload,
    pae,
    sign_envelope,
    verify_envelope,
    verify_envelope_signer,
)
from secmlops.supplychain.keys import (
    Keyring,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)

__all__ = [
    "Keyring",
    "VerifiedPayload",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "pae",
    "sign_envelope",
    "verify_envelope",
    "verify_envelope_signer",
]

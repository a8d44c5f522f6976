#!/usr/bin/env python3
"""The guest's random bytes by the `random_get` rule of proto/peergrid.proto ("Random bytes"),
computed here from the rule's text alone: X is the BLAKE3 XOF in key-derivation mode with context
"peergrid/random/v1" and key material the program digest S; guest byte k is X[4k].

    python spec_random_get.py PROGRAM_DIGEST_HEX COUNT   # prints COUNT guest bytes as hex
    python spec_random_get.py --example                  # checks the .proto's worked example
"""

import sys

import blake3

CONTEXT = "peergrid/random/v1"


def guest_random(seed: bytes, count: int) -> bytes:
    xof = blake3.blake3(seed, derive_key_context=CONTEXT).digest(length=4 * count)
    return xof[0::4]


def main(argv) -> int:
    if argv == ["--example"]:
        seed = bytes(range(32))
        xof = blake3.blake3(seed, derive_key_context=CONTEXT).digest(length=32)
        assert xof.hex() == "cbf3f6a6cb00067e5b72b57f210f48e92b47edce684bce516ba9288808c0e65a", xof.hex()
        assert guest_random(seed, 8).hex() == "cbcb5b212b686b08", guest_random(seed, 8).hex()
        print("the .proto's worked example holds")
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    seed = bytes.fromhex(argv[0])
    if len(seed) != 32:
        print("the program digest is 32 bytes (64 hex digits)", file=sys.stderr)
        return 2
    print(guest_random(seed, int(argv[1])).hex())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""SFT on passing samples (rejection sampling, best-of) through TRL's SFTTrainer.

    python -m align.recipes.sft --base tiny            # reuses runs/tiny made by the rrtf recipe
    python -m align.recipes.sft --base starcoder-15b --dry-run

The same loop as align.recipes.rrtf; only the training stage differs: prompt/completion rows
from responses that passed every test, with the loss on the completion only.
"""
import sys

from align.recipes import rrtf


def main(argv=None) -> dict:
    return rrtf.main(argv, method="sft", doc=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

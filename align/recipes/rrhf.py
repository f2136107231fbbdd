"""RRHF (arXiv:2304.05302) on the loop's ranked groups: the ranking trainer with the rrhf loss.

    python -m align.recipes.rrhf --base tiny            # reuses runs/tiny made by the rrtf recipe

The same loop as align.recipes.rrtf; only the training stage differs: every ordered pair among a
prompt's responses (not only teacher over student) and cross-entropy on the best response.
"""
import sys

from align.recipes import rrtf


def main(argv=None) -> dict:
    return rrtf.main(argv, method="rrhf", doc=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

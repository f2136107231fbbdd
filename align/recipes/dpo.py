"""DPO (arXiv:2305.18290) on the loop's ranked groups, through TRL's DPOTrainer.

    python -m align.recipes.dpo --base tiny            # reuses runs/tiny made by the rrtf recipe
    python -m align.recipes.dpo --base starcoder-15b --dry-run

The same loop as align.recipes.rrtf (problems, samples, verdicts and rankings are shared stages of
the run directory); only the training stage differs: preference pairs from the ranked groups
(train.dataset_args.pairing: best_vs_worst, teacher_vs_student or all_pairs; a tie never becomes a pair).
"""
import sys

from align.recipes import rrtf


def main(argv=None) -> dict:
    return rrtf.main(argv, method="dpo", doc=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

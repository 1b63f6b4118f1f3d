"""The evaluation script, kept for its users: the same command as ``rockir-evaluate``.

    python scripts/evaluate_retrieval.py --workdir runs/default --db datasets/synthetic_rocks/db_test \
        --metadata datasets/synthetic_rocks/metadata.csv --out runs/default/eval
"""

from rockir_jax.cli.evaluate import main

if __name__ == "__main__":
    main(prog="scripts/evaluate_retrieval.py")

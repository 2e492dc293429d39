"""Build experiments/lm_eval_tasks/austen_next_sentence.jsonl from the embedded corpus's test split (run once; committed).

A zero-shot multiple-choice task: given a sentence from one of the test chapters, pick the sentence that follows
it among four (the true one and three drawn from elsewhere in the test split). Deterministic (seeded).
"""

import json
import random
import re

from harness.config import EXPERIMENTS_DIR
from harness.data.corpus import DataConfig, load_corpus

N_ITEMS = 200
SEED = 0


def sentences(text: str) -> list[str]:
    flat = re.sub(r"\s+", " ", text)
    # a sentence ends at . ! or ? followed by a capital or a quote, but not after a title such as "Mr."
    parts = re.split(r"(?<!Mr\.)(?<!Mrs\.)(?<!Dr\.)(?<!St\.)(?<=[.!?])\s+(?=[A-Z\"])", flat)
    return [p.strip() for p in parts if 40 <= len(p.strip()) <= 200]


def main() -> None:
    test = load_corpus(DataConfig(name="janeausten")).test
    pool = sentences(test)
    rng = random.Random(SEED)
    starts = rng.sample(range(len(pool) - 1), N_ITEMS)
    out = EXPERIMENTS_DIR / "lm_eval_tasks" / "austen_next_sentence.jsonl"
    with out.open("w") as f:
        for i in starts:
            distractors = rng.sample([s for j, s in enumerate(pool) if j not in (i, i + 1)], 3)
            choices = distractors + [pool[i + 1]]
            rng.shuffle(choices)
            f.write(json.dumps({"context": pool[i], "choices": [" " + c for c in choices],
                                "label": choices.index(pool[i + 1])}) + "\n")
    print(f"wrote {N_ITEMS} items to {out}")


if __name__ == "__main__":
    main()

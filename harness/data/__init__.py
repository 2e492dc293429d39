"""Text corpora: a registry of loaders (each registers itself in its module), three fixed splits, tokens.

  corpus.py      DataConfig, Corpus, the splits and load_corpus
  janeausten.py  the embedded default corpus (Debian's r-cran-janeaustenr, read by rdata.py)
  files.py       wikitext2 (hub), a local text file, a local JSON Lines file
  tokens.py      tokenize and pack into training blocks
"""

# imported for their registrations in harness.registry.CORPORA
from harness.data import files, janeausten  # noqa: F401

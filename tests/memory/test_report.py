"""harness.memory.report: the memory command's config composes (with and without the seeds' paper) and writes its
table."""


def test_the_memory_command_composes_and_writes_its_table(tmp_path):
    from hydra import compose, initialize_config_dir

    from harness.cli import register_configs
    from harness.config import EXPERIMENTS_DIR
    from harness.memory.report import memory_config, report

    register_configs()
    with initialize_config_dir(str(EXPERIMENTS_DIR), version_base=None):
        seeds = compose("memory", overrides=["+paper=seeds_memory"])
        cfg = compose("memory", overrides=["model=tiny-llama", f"output_dir={tmp_path}", "train.seq_len=32"])
    assert seeds.model.name == "mistral-7b" and seeds.vocab_size == 32005 and seeds.published.quantized == 4.5
    table = report(memory_config(cfg))
    assert list(table.index) == ["full fine-tuning", "16-bit base + lora", "nf4_dq base + lora"]
    assert (tmp_path / "memory.csv").exists() and (tmp_path / "memory.md").exists()
    # the quantized base holds less than the 16-bit one, and full fine-tuning trains every parameter
    assert table.loc["nf4_dq base + lora", "before activations"] < table.loc["16-bit base + lora", "before activations"]
    assert table.loc["full fine-tuning", "trainable %"] == 100

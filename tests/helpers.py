"""Helpers shared by tests (import as ``from helpers import ...``; tests/ is on sys.path under pytest's rootdir)."""

from __future__ import annotations

TINY_WORDS = (
    "Review Sentiment positive negative neutral or Text Label ( ) : , . ! ? a an the this that it is was "
    "good bad great awful movie film plot acting not very really fun boring love hate and but i you"
).split()


def make_tiny_tokenizer(words: list[str] | None = None, bos: bool = False):
    """A word-level fast tokenizer built offline: whitespace + punctuation split, unknown words -> ``[UNK]``.

    Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``<s>``, 3 ``</s>``, then ``words`` (default :data:`TINY_WORDS`). With
    ``bos=True`` every sequence starts with ``<s>`` (Llama-style); otherwise no special tokens are added.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list(words or TINY_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 2)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )


def slow_side_training(monkeypatch, seconds: float) -> None:
    """Make every side-network training step take ``seconds`` longer (so a test sees a job while it trains)."""
    import time

    from mobillm.training.side_trainer import SideTrainer

    step = SideTrainer.train_batch

    def slow_step(self, *args, **kwargs):
        time.sleep(seconds)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SideTrainer, "train_batch", slow_step)


SIDE_FIELDS = ("task", "codec", "shortcuts", "hidden_size", "num_labels")


def make_hello(**overrides):
    """A valid Hello; overrides of the side network's fields (task, codec, ...) go into its side_config."""
    from mobillm.sidenet import SideConfig
    from mobillm.train_config import TrainConfig
    from mobillm.wire.messages import Hello

    side = dict(hidden_size=16, num_backbone_layers=12, shortcuts=[2, 5, 9], block="mlp", width=8, codec="int8",
                num_labels=2, label_token_ids=[5, 9])
    side.update({k: overrides.pop(k) for k in SIDE_FIELDS if k in overrides})
    if side.get("task") == "causal-lm":
        side.update(head="lm", label_token_ids=None)
    fields = dict(
        job="sst2-run_1.a", token="secret", model="HuggingFaceTB/SmolLM2-135M", fingerprint="0123abcd" * 4,
        side_config=SideConfig(**side), train_config=TrainConfig(lr=1e-3, batch_size=4), train_samples=100,
    )
    return Hello(**{**fields, **overrides})

"""
Rebuild Meta's Llama-2 `tokenizer.model` (Vicuna-v1.5's, the released ConvLLaVA checkpoints' tokenizer) offline.

The `llama-cpp-python==0.3.36` sdist vendors `vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf`, a vocab-only GGUF of
that tokenizer. Its pieces, scores and types, written into a sentencepiece `ModelProto` with the trainer and
normalizer settings Meta's file carries, give the original byte for byte (499,723 bytes, sha256 `LLAMA2_SHA256`).
The rebuilt model is then checked against llama.cpp's own expected encodings (`.gguf.inp` / `.gguf.out`).

Run in an environment with `gguf==0.19.0 sentencepiece protobuf` (see `.ci/run`):

    pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d SDIST_DIR
    python rebuild_llama2_tokenizer.py SDIST_DIR/llama_cpp_python-0.3.36.tar.gz OUTPUT/tokenizer.model
"""

import argparse
import hashlib
import tarfile
import tempfile
from pathlib import Path

import gguf
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
VOCAB = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
NORMAL = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL

#: Meta's trainer settings, in the order its file holds them (sentencepiece's own defaults are left unset).
TRAINER_SPEC = dict(
    input=["/large_experiments/theorem/datasets/MERGED/all.test1.merged"],
    model_prefix="spm_model_32k_200M_charcov099995_allowWSO__v2",
    model_type=sentencepiece_model_pb2.TrainerSpec.BPE,
    vocab_size=32000,
    self_test_sample_size=0,
    input_format="text",
    character_coverage=0.99995,
    input_sentence_size=200000000,
    seed_sentencepiece_size=1000000,
    shrinking_factor=0.75,
    num_threads=80,
    num_sub_iterations=2,
    max_sentence_length=4192,
    shuffle_input_sentence=True,
    max_sentencepiece_length=16,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    split_by_number=True,
    treat_whitespace_as_suffix=False,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    vocabulary_output_piece_score=True,
    hard_vocab_limit=True,
    use_all_vocab=False,
    byte_fallback=True,
    required_chars="",
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    unk_surface=" \u2047 ",
    unk_piece="<unk>",
    bos_piece="<s>",
    eos_piece="</s>",
    pad_piece="<pad>",
    train_extremely_large_corpus=False,
    enable_differential_privacy=False,
    differential_privacy_noise_level=0.0,
    differential_privacy_clipping_threshold=0,
)
NORMALIZER_SPEC = dict(
    name="identity",
    precompiled_charsmap=b"",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    normalization_rule_tsv="",
)


def model_from_gguf(path: Path) -> bytes:
    """The serialized sentencepiece model of a vocab-only llama GGUF's pieces, scores and token types."""
    fields = gguf.GGUFReader(path).fields
    pieces, scores, types = (fields[f"tokenizer.ggml.{name}"].contents() for name in ("tokens", "scores", "token_type"))
    proto = sentencepiece_model_pb2.ModelProto()
    for piece, score, kind in zip(pieces, scores, types, strict=True):
        entry = proto.pieces.add(piece=piece, score=score)
        if kind != NORMAL:  # sentencepiece writes a piece's type only when it is not the default
            entry.type = kind
    for name, value in TRAINER_SPEC.items():
        if name == "input":
            proto.trainer_spec.input.extend(value)
        else:
            setattr(proto.trainer_spec, name, value)
    for name, value in NORMALIZER_SPEC.items():
        setattr(proto.normalizer_spec, name, value)
    return proto.SerializeToString()


def check_against_llama_cpp(model: bytes, inputs: Path, outputs: Path) -> int:
    """Encode llama.cpp's test texts (dummy prefix, no BOS, as its test does); return how many were checked."""
    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    texts = inputs.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    expected = outputs.read_text(encoding="utf-8").split("\n")[: len(texts)]
    for text, ids in zip(texts, expected, strict=True):
        got = processor.encode(text)
        if got != [int(token) for token in ids.split()]:
            raise SystemExit(f"The rebuilt model encodes {text!r} as {got}, llama.cpp expects {ids!r}.")
    return len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sdist", type=Path, help="llama_cpp_python-0.3.36.tar.gz")
    parser.add_argument("output", type=Path, help="where to write tokenizer.model")
    args = parser.parse_args()
    with tarfile.open(args.sdist) as archive, tempfile.TemporaryDirectory() as folder:
        root = archive.getnames()[0].split("/")[0]
        names = [f"{root}/{VOCAB}{suffix}" for suffix in ("", ".inp", ".out")]
        archive.extractall(folder, members=[archive.getmember(name) for name in names], filter="data")
        vocab, inputs, outputs = (Path(folder, name) for name in names)
        model = model_from_gguf(vocab)
        checked = check_against_llama_cpp(model, inputs, outputs)
    digest = hashlib.sha256(model).hexdigest()
    if digest != LLAMA2_SHA256:
        raise SystemExit(f"The rebuilt model ({len(model)} bytes) has sha256 {digest}, not Llama-2's {LLAMA2_SHA256}.")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(model)
    print(f"{args.output}: {len(model)} bytes, sha256 {digest}, {checked} llama.cpp encodings matched")


if __name__ == "__main__":
    main()

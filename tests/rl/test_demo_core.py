"""Tests of the framework-independent demo pieces (tokenizer, model, task, GRPO, torch generator)."""

import json
import os
import random

import pytest
import torch

from forge_rl.demo.grpo import Experience, Trainer, build_experiences, collate
from forge_rl.demo.model import (
    LlamaForCausalLM,
    ModelConfig,
    build_model,
    log_probs_of,
    read_safetensors,
    save_model_folder,
    write_safetensors,
)
from forge_rl.demo.task import AdditionTask, expected_answer, is_correct, score
from forge_rl.demo.tokenizer import CharTokenizer
from forge_rl.demo.torch_generator import TorchGenerator
from forge_rl.losses import group_advantages, kl_penalty, policy_loss
from forge_rl.types import Completion, Prompt, ScoredGroup

TOK = CharTokenizer()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests share 2 cores with other work; one thread is plenty for such tiny models."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SMALL = ModelConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1)


# ----------------------------- tokenizer -----------------------------


def test_encode_decode_round_trip():
    ids = TOK.encode("What is 3+4?")
    assert ids[0] == TOK.bos_id
    assert TOK.decode(ids) == "What is 3+4?"
    assert TOK.decode([TOK.token_to_id["7"], TOK.eos_id]) == "7"
    assert TOK.decode([TOK.token_to_id["7"], TOK.pad_id], skip_special=False) == "7<pad>"
    assert TOK.encode("x", add_bos=False) == [TOK.unk_id]


def test_hf_tokenizer_matches_pure_python():
    pytest.importorskip("tokenizers")
    hf = TOK.to_hf_tokenizer()
    for text in ["3+4=", "What is 9+0?", "  1 "]:
        assert hf.encode(text).ids == TOK.encode(text)
        assert hf.decode(TOK.encode(text)) == text
    assert hf.decode([TOK.bos_id, TOK.token_to_id["5"], TOK.eos_id]) == "5"
    assert hf.get_vocab_size() == TOK.vocab_size


# ----------------------------- model -----------------------------


def test_parameter_names_and_shapes_match_hf_llama():
    model = LlamaForCausalLM(SMALL)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    h, i, v, kv = SMALL.hidden_size, SMALL.intermediate_size, SMALL.vocab_size, SMALL.num_kv_heads * SMALL.head_dim
    expected = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(SMALL.num_layers):
        p = f"model.layers.{n}."
        expected.update({
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    assert shapes == expected


def test_same_seed_same_weights():
    a, b, c = build_model(SMALL, 3), build_model(SMALL, 3), build_model(SMALL, 4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_causal_and_left_padding_invariant():
    model = build_model(SMALL, 0)
    ids = torch.tensor([TOK.encode("12+3=")])
    logits = model(ids)
    # Changing a later token leaves earlier logits alone.
    changed = ids.clone()
    changed[0, -1] = TOK.token_to_id["9"]
    assert torch.allclose(model(changed)[0, :-1], logits[0, :-1], atol=1e-5)
    # Left padding with a mask changes nothing for the real tokens.
    padded = torch.cat([torch.full((1, 3), TOK.pad_id), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    assert torch.allclose(model(padded, mask)[0, 3:], logits[0], atol=1e-5)


def test_matches_transformers_llama_if_installed():
    transformers = pytest.importorskip("transformers")
    model = build_model(SMALL, 0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL.to_hf_config()))
    hf.load_state_dict(model.state_dict(), strict=False)
    ids = torch.tensor([TOK.encode("What is 3+4?")])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-4)


def test_safetensors_writer_round_trip(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(2).to(torch.bfloat16)}
    path = str(tmp_path / "t.safetensors")
    write_safetensors(tensors, path)
    back = read_safetensors(path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    assert header_len % 8 == 0


def test_safetensors_writer_agrees_with_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    sd = build_model(SMALL, 0).state_dict()
    ours = str(tmp_path / "ours.safetensors")
    write_safetensors(sd, ours)
    loaded = st.load_file(ours)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    theirs = str(tmp_path / "theirs.safetensors")
    st.save_file(dict(sd), theirs)
    assert all(torch.equal(read_safetensors(theirs)[k], sd[k]) for k in sd)


def test_save_model_folder(tmp_path):
    pytest.importorskip("tokenizers")
    model = build_model(SMALL, 0)
    folder = save_model_folder(model, TOK, str(tmp_path / "m"))
    assert sorted(os.listdir(folder)) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32"
    assert config["vocab_size"] == TOK.vocab_size and config["num_key_value_heads"] == 1
    weights = read_safetensors(os.path.join(folder, "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


# ----------------------------- task -----------------------------


def test_score_and_success():
    assert expected_answer("7+5=") == "2" and expected_answer("What is 3+4?") == "7"
    assert score("3+4=", "7") == 1.0 and is_correct("3+4=", "7")
    assert score("3+4=", "77") == 0.5 and not is_correct("3+4=", "77")
    assert score("3+4=", "7<pad>") == 0.5
    assert score("3+4=", "6") == 0.0 and score("3+4=", "") == 0.0


def test_prompt_sampler_is_seeded():
    task = AdditionTask()
    a = task.sample_prompts(random.Random(1), 20)
    assert a == task.sample_prompts(random.Random(1), 20)
    assert all(p in task.all_prompts() for p in a)
    assert len(AdditionTask(template="question").all_prompts()[0]) == len("What is 0+0?")


# ----------------------------- GRPO -----------------------------


def test_group_advantages():
    adv = group_advantages([1.0, 0.0, 0.0, 0.0])
    assert adv[0] > 0 > adv[1] and abs(sum(adv)) < 1e-6
    assert group_advantages([0.5, 0.5]) == [0.0, 0.0]


def _completion(prompt, tokens):
    return Completion(prompt=prompt, prompt_ids=TOK.encode(prompt), text="", token_ids=tokens,
                      logprobs=[-1.0] * len(tokens))


def _group(index, prompt, completions, rewards, version=0):
    return ScoredGroup(index, Prompt(prompt), completions, rewards, version)


def test_build_experiences_drops_groups_without_signal():
    seven, eos = TOK.token_to_id["7"], TOK.eos_id
    groups = [_group(0, "3+4=", [_completion("3+4=", [seven, eos]), _completion("3+4=", [seven])], [1.0, 0.5], 3),
              _group(1, "1+1=", [_completion("1+1=", [seven])] * 2, [0.0, 0.0], 3)]
    batch = build_experiences(groups)
    assert len(batch) == 2 and batch[0].advantage > 0 > batch[1].advantage and batch[0].policy_version == 3
    assert batch[0].behaviour_logprobs == [-1.0, -1.0]


def test_build_experiences_needs_a_logprob_per_token():
    broken = _completion("3+4=", [5, 6])
    broken.logprobs = [-1.0]
    with pytest.raises(ValueError, match="2 tokens but 1 logprobs"):
        build_experiences([_group(0, "3+4=", [broken, _completion("3+4=", [5])], [1.0, 0.0])])


def test_collate_targets_only_completion_tokens():
    e = Experience(prompt_ids=[1, 5, 6], completion_ids=[7, 2], advantage=1.0, behaviour_logprobs=[-0.5, -0.25])
    input_ids, mask, targets, behaviour, adv = collate([e, Experience([1, 5], [9], -1.0, [-2.0])], pad_id=0)
    assert input_ids.tolist() == [[1, 5, 6, 7, 2], [1, 5, 9, 0, 0]]
    assert targets.tolist() == [[-1, -1, 7, 2, -1], [-1, 9, -1, -1, -1]]
    assert behaviour.tolist() == [[0, 0, -0.5, -0.25, 0], [0, -2.0, 0, 0, 0]]
    assert mask.tolist()[1] == [1, 1, 1, 0, 0] and adv.tolist() == [1.0, -1.0]


def test_policy_loss_is_reinforce_on_fresh_samples_and_clips_stale_ones():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[True, True]])
    loss, stats = policy_loss(logprobs, logprobs.detach(), torch.tensor([2.0]), mask)
    loss.backward()
    assert stats["ratio_mean"] == 1.0 and stats["clipped_fraction"] == 0.0
    assert torch.allclose(logprobs.grad, torch.tensor([[-1.0, -1.0]]))  # -A / tokens
    # The new policy already likes these tokens far more than the old one did: no further push.
    fresh = torch.tensor([[-0.1, -0.1]], requires_grad=True)
    loss, stats = policy_loss(fresh, torch.tensor([[-1.0, -1.0]]), torch.tensor([1.0]), mask)
    loss.backward()
    assert stats["clipped_fraction"] == 1.0 and fresh.grad.abs().sum() == 0
    assert kl_penalty(fresh, fresh.detach(), mask).item() == 0.0
    assert kl_penalty(fresh, torch.tensor([[-1.0, -1.0]]), mask).item() > 0.0


def test_trainer_step_moves_probability_toward_positive_advantage():
    trainer = Trainer(SMALL, init_seed=0, lr=1e-2)
    prompt = "3+4="
    good, bad = [TOK.token_to_id["7"], TOK.eos_id], [TOK.token_to_id["1"], TOK.eos_id]

    def logprob(tokens):
        with torch.no_grad():
            ids = TOK.encode(prompt)
            logits = trainer.model(torch.tensor([ids + tokens]))
        return log_probs_of(logits[0, len(ids) - 1 : -1], torch.tensor(tokens))

    def completion(tokens):
        c = _completion(prompt, tokens)
        c.logprobs = logprob(tokens).tolist()  # the behaviour policy is the current one
        return c

    before_good, before_bad = logprob(good).sum(), logprob(bad).sum()
    for _ in range(3):
        stats = trainer.step([_group(0, prompt, [completion(good), completion(bad)], [1.0, 0.0])])
    assert stats["version"] == 3 and stats["num_tokens"] == 4 and not stats["skipped"]
    assert logprob(good).sum() > before_good and logprob(bad).sum() < before_bad
    skipped = trainer.step([])
    assert skipped["skipped"] and skipped["version"] == 4  # a version per step, signal or not
    sd = trainer.state_dict()
    sd["lm_head.weight"].zero_()  # a copy: the trainer's weights are untouched
    assert trainer.model.lm_head.weight.abs().sum() > 0


# ----------------------------- torch generator -----------------------------


def test_generator_shapes_logprobs_and_determinism():
    gen = TorchGenerator(SMALL, seed=5)
    prompts = ["3+4=", "What is 1+2?"]  # different lengths exercise left padding
    groups = gen.generate(prompts, n=3, max_tokens=4)
    assert [len(g) for g in groups] == [3, 3]
    for prompt, group in zip(prompts, groups):
        for c in group:
            assert c.prompt == prompt and c.prompt_ids == TOK.encode(prompt)
            assert len(c.token_ids) == len(c.logprobs) <= 4 and all(lp <= 0 for lp in c.logprobs)
            assert (c.finish_reason == "stop") == (c.token_ids[-1] == TOK.eos_id)
            # logprobs are those of the model on the unpadded sequence
            logits = gen.model(torch.tensor([c.prompt_ids + c.token_ids]))
            expected = log_probs_of(logits[0, len(c.prompt_ids) - 1 : -1], torch.tensor(c.token_ids))
            assert torch.allclose(expected, torch.tensor(c.logprobs), atol=1e-4)
    again = TorchGenerator(SMALL, seed=5).generate(prompts, n=3, max_tokens=4)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in groups]
    # A per-call seed makes a call independent of the calls before it (as vLLM's per request).
    one, two = TorchGenerator(SMALL, seed=1), TorchGenerator(SMALL, seed=2)
    two.generate(prompts, n=2, max_tokens=4)
    seeded = [[[c.token_ids for c in g] for g in gen.generate(prompts, n=3, max_tokens=4, seed=11)] for gen in (one, two)]
    assert seeded[0] == seeded[1]


def test_generator_greedy_and_load_state_dict():
    gen = TorchGenerator(SMALL, seed=0, init_seed=0)
    other = build_model(SMALL, 9)
    gen.load_state_dict(other.state_dict(), version=7)
    assert gen.weights_version == 7
    c = gen.generate(["2+2="], n=2, max_tokens=1, temperature=0)[0]
    expected = other(torch.tensor([TOK.encode("2+2=")]))[0, -1].argmax().item()
    assert c[0].token_ids == c[1].token_ids == [expected]

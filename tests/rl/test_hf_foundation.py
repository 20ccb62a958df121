"""The pieces `forge grpo` stands on: the config (YAML + overrides, checked before anything
starts), the GSM8K-style task, and HF models of each supported architecture: logprobs, a
training step, checkpoints that transformers loads and that resume exactly."""

from __future__ import annotations

import json
import os
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from forge_rl import config as grpo_config  # noqa: E402
from forge_rl import hf  # noqa: E402
from forge_rl.tasks import gsm8k  # noqa: E402

from hf_models import ARCHITECTURES  # noqa: E402

DATA = grpo_config.data_path(grpo_config.GRPOConfig(model="", steps=1))


# -- config -----------------------------------------------------------------------------------
def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_two_line_yaml_is_a_complete_config_and_overrides_win(models, tmp_path):
    path = write(tmp_path / "run.yaml", f"model: {models['qwen3']}\nsteps: 3\n")
    cfg = grpo_config.load(path)
    assert cfg.model == models["qwen3"] and cfg.steps == 3 and cfg.beta > 0
    cfg = grpo_config.load(path, ["steps=5", "beta=0", "mode=sync"])
    assert (cfg.steps, cfg.beta, cfg.mode) == (5, 0.0, "sync")


@pytest.mark.parametrize("text, overrides, message", [
    ("model: {m}\nsteps: 3\nlearning_rate: 0.1\n", [], "unknown key 'learning_rate'"),
    ("model: {m}\nsteps: 3\n", ["batchsize=4"], "unknown key 'batchsize'"),
    ("steps: 3\n", [], "'model' is required"),
    ("model: /nowhere/model\nsteps: 3\n", [], "model: '/nowhere/model' is not a directory"),
    ("model: {m}\nsteps: many\n", [], "key 'steps'"),
    ("model: {m}\nsteps: 3\nresume: {m}\n", [], "no trainer_state.pt"),
    ("model: {m}\nsteps: 3\ndata: /nowhere.jsonl\n", [], "data: '/nowhere.jsonl' not found"),
])
def test_a_bad_config_fails_at_once_naming_the_key_or_path(models, tmp_path, text, overrides,
                                                           message):
    path = write(tmp_path / "bad.yaml", text.format(m=models["llama"]))
    started = time.monotonic()
    with pytest.raises(grpo_config.ConfigError, match=message.replace("(", r"\(")):
        grpo_config.load(path, overrides)
    assert time.monotonic() - started < 2.0  # checked before anything starts


def test_resuming_a_checkpoint_that_has_every_step_already_says_to_raise_steps(models,
                                                                              tmp_path):
    done = tmp_path / "step-3"  # what `forge grpo` saves after its third step
    done.mkdir()
    for name in os.listdir(models["llama"]):
        os.symlink(os.path.join(models["llama"], name), done / name)
    (done / "trainer_state.pt").write_bytes(b"")
    (done / "trainer_state.json").write_text('{"step": 3}')
    path = write(tmp_path / "run.yaml", f"model: {models['llama']}\nsteps: 3\n")
    with pytest.raises(grpo_config.ConfigError, match="saved at step 3.*raise steps above 3"):
        grpo_config.load(path, [f"resume={done}"])
    assert grpo_config.load(path, [f"resume={done}", "steps=5"]).resume == str(done)


def test_a_model_vllm_cannot_serve_is_refused_unless_the_torch_generator_is_asked(models,
                                                                                   tmp_path):
    odd = tmp_path / "gpt2ish"
    odd.mkdir()
    for name in os.listdir(models["llama"]):
        os.symlink(os.path.join(models["llama"], name), odd / name)
    (odd / "config.json").unlink()
    config = json.loads(open(os.path.join(models["llama"], "config.json")).read())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    path = write(tmp_path / "odd.yaml", f"model: {odd}\nsteps: 1\n")
    with pytest.raises(grpo_config.ConfigError, match="GPT2LMHeadModel.*generator=torch"):
        grpo_config.load(path)
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    for name in os.listdir(models["llama"]):
        if name != "config.json":
            os.symlink(os.path.join(models["llama"], name), narrow / name)
    (narrow / "config.json").write_text(json.dumps({**config, "head_dim": 16}))
    if not torch.cuda.is_available():
        with pytest.raises(grpo_config.ConfigError, match="size 16.*at least 32"):
            grpo_config.load(None, [f"model={narrow}", "steps=1"])
    assert grpo_config.load(None, [f"model={narrow}", "steps=1", "generator=torch"])


# -- the task ---------------------------------------------------------------------------------
def test_final_answers_are_read_as_gsm8k_writes_them():
    assert gsm8k.final_answer("3 + 4 = 7\n#### 7") == "7"
    assert gsm8k.final_answer("so it is 1,200 apples") == "1200"
    assert gsm8k.final_answer("#### 2.50") == "2.5"
    assert gsm8k.final_answer("no number") is None
    problem = gsm8k.Problem("q", "12")
    assert gsm8k.reward("I think 3 then 12", problem) == 1.0
    assert gsm8k.reward("#### 13", problem) == gsm8k.FORMAT_REWARD
    assert gsm8k.reward("no idea", problem) == 0.0


def test_the_shipped_problems_load_and_their_answers_are_right():
    problems = gsm8k.load_problems(DATA)
    assert len(problems) >= 200
    records = [json.loads(line) for line in open(DATA)]
    for record, problem in zip(records, problems):
        left, right = record["answer"].split("\n")[0].split(" = ")
        assert str(eval(left)) == right == problem.answer  # the arithmetic is right


def test_a_bad_data_line_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        gsm8k.load_problems(str(path))


# -- models -----------------------------------------------------------------------------------
def grpo_step(model, optimizer, tokenizer, seed: int = 0) -> float:
    """One clipped-surrogate step on fixed completions (what the trainer does per batch)."""
    from forge_rl.losses import policy_loss

    generator = torch.Generator().manual_seed(seed)
    prompts = [hf.prompt_ids(tokenizer, "Ana has 3 apples. How many apples?")] * 2
    completions = [torch.randint(6, len(tokenizer), (5,), generator=generator).tolist()
                   for _ in prompts]
    logprobs = hf.completion_logprobs(model, prompts, completions, tokenizer.pad_token_id)
    new = torch.stack(logprobs)  # [2 completions, 5 tokens]
    advantages = torch.tensor([1.0, -1.0])
    loss, _ = policy_loss(new, new.detach(), advantages, torch.ones_like(new))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_trains_and_its_checkpoint_resumes_exactly(models, arch, tmp_path):
    tokenizer = hf.load_tokenizer(models[arch])
    assert tokenizer.chat_template  # the prompt format comes from the directory
    model = hf.load_model(models[arch])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = grpo_step(model, optimizer, tokenizer, seed=1)
    assert torch.isfinite(torch.tensor(loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    checkpoint = hf.save_checkpoint(str(tmp_path / "step1"), model, tokenizer, optimizer, 1)
    uninterrupted = grpo_step(model, optimizer, tokenizer, seed=2)
    # A fresh model and optimizer from the checkpoint take the same next step.
    model2 = hf.load_model(checkpoint)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    assert hf.load_trainer_state(checkpoint, optimizer2) == 1
    resumed = grpo_step(model2, optimizer2, tokenizer, seed=2)
    assert abs(resumed - uninterrupted) < 1e-6
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor, model2.state_dict()[name], atol=1e-6), name
    # What weight sync sends: HF names, without a tied lm_head.
    names = set(hf.state_dict_for_sync(model))
    assert "model.embed_tokens.weight" in names
    assert ("lm_head.weight" in names) == (not model.config.tie_word_embeddings)

from megaconcept.train.schedule import warmup_cosine


def test_warmup_then_cosine_to_floor():
    assert warmup_cosine(0, warmup=10, total=100, floor=0.1) == 0.1
    assert warmup_cosine(9, warmup=10, total=100, floor=0.1) == 1.0
    assert abs(warmup_cosine(55, warmup=10, total=100, floor=0.1) - 0.55) < 1e-9
    assert abs(warmup_cosine(100, warmup=10, total=100, floor=0.1) - 0.1) < 1e-9
    assert abs(warmup_cosine(500, warmup=10, total=100, floor=0.1) - 0.1) < 1e-9


def test_token_path_groups_share_the_backbone_multiplier_and_freeze():
    import torch

    from megaconcept.model import ConceptMLM, ConceptModelConfig
    from megaconcept.model.config import BackboneConfig
    from megaconcept.train.builders import param_groups
    from megaconcept.train.schedule import build_scheduler

    cfg = ConceptModelConfig(vocab_size=50, num_concepts=4, concept_dim=16, num_heads=2, max_position_embeddings=32,
                             backbone=BackboneConfig(num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1,
                                                     intermediate_size=32))
    model = ConceptMLM(cfg)
    groups = param_groups(model.named_parameters(), weight_decay=0.1, lr=1e-3, backbone_lr_mult=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    token_path = {names[id(p)] for g in groups if g["backbone"] for p in g["params"]}
    # The warm-started tensors (embedding, which the tied LM head shares, and every backbone tensor) move as one.
    assert "encoder.token_embed.weight" in token_path
    assert {n for n in names.values() if n.startswith("encoder.backbone.")} <= token_path
    assert not any(n.startswith(("encoder.layers.", "decoder.", "lm_bias")) for n in token_path)
    assert all(g["lr"] == (1e-4 if g["backbone"] else 1e-3) for g in groups)
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim < 2 for p in g["params"]))

    opt = torch.optim.AdamW(groups)
    sched = build_scheduler(opt, warmup=2, total=10, floor=0.1, backbone_freeze_steps=3)
    lrs = []
    for _ in range(4):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    frozen = [g["backbone"] for g in opt.param_groups]
    assert all(lr == 0.0 for step in lrs[:3] for lr, f in zip(step, frozen) if f)
    assert all(lr > 0.0 for lr, f in zip(lrs[3], frozen) if f)
    assert all(lr > 0.0 for step in lrs for lr, f in zip(step, frozen) if not f)

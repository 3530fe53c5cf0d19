from megaconcept.train.schedule import warmup_cosine


def test_warmup_then_cosine_to_floor():
    assert warmup_cosine(0, warmup=10, total=100, floor=0.1) == 0.1
    assert warmup_cosine(9, warmup=10, total=100, floor=0.1) == 1.0
    assert abs(warmup_cosine(55, warmup=10, total=100, floor=0.1) - 0.55) < 1e-9
    assert abs(warmup_cosine(100, warmup=10, total=100, floor=0.1) - 0.1) < 1e-9
    assert abs(warmup_cosine(500, warmup=10, total=100, floor=0.1) - 0.1) < 1e-9

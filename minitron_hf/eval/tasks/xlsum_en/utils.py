"""ROUGE for the xlsum_en task (lm-eval loads this module by path through `!function`)."""


def process_results(doc, results):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = scorer.score(doc["summary"], results[0].strip())
    return {k: scores[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")}

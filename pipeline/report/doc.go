// Package report renders the metrics.jsonl files of training runs into plots: one
// PNG chart per metric and one self-contained HTML page (the charts embedded as
// base64 data URIs, plus a table of each run's final values).
//
// A metrics.jsonl has one JSON object per line, with TRL's metric names: training
// lines ({"loss":0.69,"rewards/accuracies":0.5,...,"time/step_s":0.8,"epoch":0.02,
// "step":1}), evaluation lines whose keys carry the "eval_" prefix
// ({"eval_loss":0.68,...}) and, last, the run's totals with Hugging Face's speed
// metrics and no step ({"train_runtime":12.3,"train_samples_per_second":26.1,
// "train_steps_per_second":3.3,"epoch":1}). Every numeric key of a step's line except
// "step" and "epoch" is a metric; "step" is the x axis. The training and evaluation
// series of one metric share a chart (the seconds of each step, time/step_s, among
// them), several runs are overlaid on it with a legend naming each run, and the totals
// join the table of final values.
//
// Reading is lenient: a blank or damaged line (a training run still writing its
// last line, say), a value that is not a finite number and a line without a step
// (other than the totals) are reported as Warnings naming the file and line, and the
// rest of the file is used. Only a missing or unreadable file is an error.
//
// Charts are drawn with gonum.org/v1/plot; every file is written atomically with
// ortalign/internal/atomicfile.
package report

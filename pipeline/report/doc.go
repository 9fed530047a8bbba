// Package report renders the metrics.jsonl files of training runs into plots: one
// PNG chart per metric and one self-contained HTML page (the charts embedded as
// base64 data URIs, plus a table of each run's final values).
//
// A metrics.jsonl has one JSON object per line, with TRL's metric names: training
// lines ({"loss":0.69,"rewards/accuracies":0.5,...,"epoch":0.02,"step":1}) and
// evaluation lines whose keys carry the "eval_" prefix ({"eval_loss":0.68,...}).
// Every numeric key except "step" and "epoch" is a metric; "step" is the x axis.
// The training and evaluation series of one metric share a chart, and several runs
// are overlaid on it with a legend naming each run.
//
// Reading is lenient: a blank or damaged line (a training run still writing its
// last line, say), a value that is not a finite number and a line without a step
// are reported as Warnings naming the file and line, and the rest of the file is
// used. Only a missing or unreadable file is an error.
//
// Charts are drawn with gonum.org/v1/plot; every file is written atomically with
// ortalign/internal/atomicfile.
package report

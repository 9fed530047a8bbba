// Package progress reports long work: a bar with rate and ETA on a terminal, plain
// lines elsewhere.
package progress

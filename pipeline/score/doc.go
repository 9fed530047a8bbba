// Package score scores offline: sequence log-probs and implicit rewards of preference
// pairs, reward-model scores of pairs and completions, and score files streamed a
// window of row groups at a time.
package score

package report

import (
	"sort"
	"strconv"
	"strings"
)

// known lists well-known metric names (TRL's) in report order, each with its group.
var known = []struct {
	name  string
	group int
}{
	{"loss", 0}, {"loss/policy_avg", 0}, {"loss/value_avg", 0},
	{"rewards/accuracies", 1}, {"accuracy", 1}, {"mean_token_accuracy", 1},
	{"rewards/margins", 2}, {"margin", 2},
	{"rewards/chosen", 3}, {"rewards/rejected", 3}, {"min_reward", 3}, {"mean_reward", 3}, {"max_reward", 3},
	{"logps/chosen", 4}, {"logps/rejected", 4}, {"logits/chosen", 4}, {"logits/rejected", 4},
	{"objective/kl", 5}, {"objective/entropy", 5}, {"objective/scores", 5}, {"objective/rlhf_reward", 5}, {"objective/non_score_reward", 5},
	{"learning_rate", 6},
	{"grad_norm", 7},
	{"time/step_s", 8},
}

// groupOf places a metric that is not in known by its name.
func groupOf(name string) int {
	n := strings.ToLower(name)
	switch {
	case strings.Contains(n, "loss"):
		return 0
	case strings.Contains(n, "accurac"):
		return 1
	case strings.Contains(n, "margin"):
		return 2
	case strings.HasPrefix(n, "rewards/") || strings.HasSuffix(n, "_reward"):
		return 3
	case strings.HasPrefix(n, "logps/") || strings.HasPrefix(n, "logits/"):
		return 4
	case strings.HasPrefix(n, "objective/") || n == "kl" || strings.HasSuffix(n, "/kl") || strings.HasPrefix(n, "kl_") || strings.HasSuffix(n, "_kl") || strings.Contains(n, "score"):
		return 5
	case n == "lr" || strings.HasSuffix(n, "learning_rate"):
		return 6
	case strings.HasSuffix(n, "grad_norm"):
		return 7
	}
	return 8
}

// SortMetrics sorts metric names into report order: losses, accuracies, margins,
// rewards (chosen, rejected), log-probs, KL and scores, learning rate, gradient norm,
// then every other name alphabetically. Within a group TRL's names come first, in
// their usual order, then the others alphabetically.
func SortMetrics(names []string) {
	rank := func(name string) (int, int) {
		for i, k := range known {
			if k.name == name {
				return k.group, i
			}
		}
		return groupOf(name), len(known)
	}
	sort.SliceStable(names, func(i, j int) bool {
		gi, ki := rank(names[i])
		gj, kj := rank(names[j])
		if gi != gj {
			return gi < gj
		}
		if ki != kj {
			return ki < kj
		}
		return names[i] < names[j]
	})
}

// metricNames is the sorted union of the metric names of runs.
func metricNames(runs []*Run) []string {
	seen := map[string]bool{}
	var names []string
	for _, r := range runs {
		for _, m := range []map[string][]Point{r.Train, r.Eval} {
			for k := range m {
				if !seen[k] {
					seen[k] = true
					names = append(names, k)
				}
			}
		}
	}
	SortMetrics(names)
	return names
}

// maxBase bounds the length of a chart's file name (without ".png").
const maxBase = 100

// fileBases gives each metric a distinct file name base: the name with every
// character other than ASCII letters, digits, '.', '_' and '-' replaced by '_'
// ("rewards/accuracies" → "rewards_accuracies"), no leading '.' or '-', and a "-2",
// "-3", ... suffix where two names would collide (ignoring case, for file systems
// that do).
func fileBases(names []string) []string {
	used := map[string]bool{}
	out := make([]string, len(names))
	for i, name := range names {
		b := []byte(name)
		for j, c := range b {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				b[j] = '_'
			}
		}
		base := string(b)
		if len(base) > maxBase {
			base = base[:maxBase]
		}
		if base == "" || base[0] == '.' || base[0] == '-' {
			base = "_" + base
		}
		cand := base
		for n := 2; used[strings.ToLower(cand)]; n++ {
			cand = base + "-" + strconv.Itoa(n)
		}
		used[strings.ToLower(cand)] = true
		out[i] = cand
	}
	return out
}

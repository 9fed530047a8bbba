package autodiff

import (
	"embed"
	"sync"

	"ortalign/internal/srcdigest"
)

// sources are this package's files as built; RulesDigest reads its non-test Go
// sources.
//
//go:embed *.go
var sources embed.FS

// RulesDigest returns a digest (SHA-256, hex) of autodiff's own Go sources as
// built into the binary: the gradient rules and everything else here that decides
// the training graph Build emits (the walk, the emission helpers, gradient
// checkpointing, shape sampling). It changes whenever that code changes, with no
// version to bump by hand, so a cache of generated graphs keyed on it is never
// reused by a build whose autodiff would emit another graph. A change that emits
// the same graphs (a comment) changes it too: such a cache is then rebuilt once.
func RulesDigest() string { return rulesDigest() }

var rulesDigest = sync.OnceValue(func() string {
	d, err := srcdigest.Of(sources)
	if err != nil {
		// Cannot happen: this file is one of the sources. The text is no hex
		// digest, so it matches no digest of a working build.
		return "unreadable: " + err.Error()
	}
	return d
})

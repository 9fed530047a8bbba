package objective

import (
	"embed"
	"sync"

	"ortalign/internal/srcdigest"
)

// sources are this package's files as built.
//
//go:embed *.go
var sources embed.FS

// sourceDigest is the digest of this package's non-test Go sources: every objective
// reports it (engine.SourceDigester), as the package writes the loss heads.
var sourceDigest = sync.OnceValues(func() (string, error) { return srcdigest.Of(sources) })

// SourceDigest implements engine.SourceDigester.
func (DPO) SourceDigest() (string, error) { return sourceDigest() }

// SourceDigest implements engine.SourceDigester.
func (SFT) SourceDigest() (string, error) { return sourceDigest() }

// SourceDigest implements engine.SourceDigester.
func (Reward) SourceDigest() (string, error) { return sourceDigest() }

// SourceDigest implements engine.SourceDigester.
func (RL) SourceDigest() (string, error) { return sourceDigest() }

// SourceDigest implements engine.SourceDigester.
func (PPO) SourceDigest() (string, error) { return sourceDigest() }

// SourceDigest implements engine.SourceDigester.
func (KTO) SourceDigest() (string, error) { return sourceDigest() }

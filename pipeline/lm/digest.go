package lm

import (
	"embed"
	"sync"

	"ortalign/internal/srcdigest"
)

// sources are this package's files as built.
//
//go:embed *.go
var sources embed.FS

// SourceDigest is the digest of this package's non-test Go sources (srcdigest.Of): the
// training-graph cache key includes it, as the heads this package appends shape the graph.
var SourceDigest = sync.OnceValues(func() (string, error) { return srcdigest.Of(sources) })

package autodiff

import (
	"os"
	"regexp"
	"testing"

	"ortalign/internal/srcdigest"
)

// TestRulesDigestCoversTheSources: RulesDigest is the digest of the package's
// non-test Go files as they are on disk, so every source file, the rules' among
// them, is in it (an embed pattern that missed one would differ).
func TestRulesDigestCoversTheSources(t *testing.T) {
	got := RulesDigest()
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(got) {
		t.Fatalf("RulesDigest() = %q, want a hex SHA-256", got)
	}
	want, err := srcdigest.Of(os.DirFS("."))
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("RulesDigest() = %s, the package's sources on disk give %s", got, want)
	}
}

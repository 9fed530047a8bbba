package tokenize

import "testing"

// BenchmarkLoadGemma3 times loading the largest reference file (33 MB, 262k tokens, 515k merges).
func BenchmarkLoadGemma3(b *testing.B) {
	dir := tokenizerDir(b, "gemma3")
	for i := 0; i < b.N; i++ {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

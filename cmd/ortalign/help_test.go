package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestHelpOrtLibValueName renders --help of the root command and of every subcommand and
// checks that --ort-lib's value is named PATH (pflag takes a backquoted word of the usage
// string as the value name).
func TestHelpOrtLibValueName(t *testing.T) {
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				walk(sub, append(append([]string(nil), path...), sub.Name()))
			}
		}
	}
	walk(newRootCmd(), nil)
	if len(paths) < 2 {
		t.Fatalf("found %d commands, want the root and its subcommands", len(paths))
	}
	want := regexp.MustCompile(`^\s+--ort-lib PATH\s+PATH of libonnxruntime\.so \(.*make setup`)
	for _, path := range paths {
		name := strings.Join(append([]string{"ortalign"}, path...), " ")
		t.Run(name, func(t *testing.T) {
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(append(append([]string(nil), path...), "--help"))
			if err := root.Execute(); err != nil {
				t.Fatalf("%s --help: %v", name, err)
			}
			var line string
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.Contains(l, "--ort-lib") {
					line = l
					break
				}
			}
			if line == "" {
				t.Fatalf("%s --help has no --ort-lib line:\n%s", name, out.String())
			}
			if !want.MatchString(line) || strings.Contains(line, "`") {
				t.Errorf("%s --help: --ort-lib line is\n%s\nwant it to match %s", name, line, want)
			}
		})
	}
}

// TestFlagValueNames: pflag takes a backquoted word of a usage string as the flag's value
// name, so a usage that quotes a command (`make setup`) shows a nonsense value name in
// --help. Every value name must be one word.
func TestFlagValueNames(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if name, _ := pflag.UnquoteUsage(f); strings.ContainsAny(name, " \t") {
					t.Errorf("%s --%s: value name %q (a backquoted phrase in its usage)", c.CommandPath(), f.Name, name)
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
}

package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// The README's table of `harikube server` flags is what users read; it must
// name every flag the command has, with its shorthand and its default.
func TestServerFlagsMatchTheREADME(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := flagTable(t, string(readme), "## `harikube server`")
	flags := newServerCommand().Flags()
	documented := map[string]bool{}
	for _, row := range rows {
		for _, name := range row.long {
			f := flags.Lookup(name)
			if f == nil {
				t.Errorf("the README documents --%s, which harikube server does not have", name)
				continue
			}
			documented[name] = true
			if len(row.long) == 1 && f.Shorthand != row.short {
				t.Errorf("--%s: shorthand %q, the README says %q", name, f.Shorthand, row.short)
			}
			switch literal, ok := singleLiteral(row.def); {
			case name == "data-dir":
				// Chosen by the user running it; the README names both.
				if !strings.Contains(row.def, "/var/lib/harikube") || !strings.Contains(row.def, "~/.harikube") || f.DefValue != defaultDataDir() {
					t.Errorf("--data-dir: default %q, the README says %q", f.DefValue, row.def)
				}
			case ok:
				if f.DefValue != literal {
					t.Errorf("--%s: default %q, the README says %q", name, f.DefValue, literal)
				}
			default:
				// A described default ("SQLite in the data dir", "none") is
				// decided at run time: the flag itself must be unset.
				if f.DefValue != "" && f.DefValue != "[]" {
					t.Errorf("--%s: default %q, the README describes it as %q", name, f.DefValue, row.def)
				}
			}
		}
	}
	if len(documented) < 10 {
		t.Fatalf("read only %d flags from the README's table: %+v", len(documented), rows)
	}
	flags.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden && !documented[f.Name] {
			t.Errorf("--%s is not in the README's table of harikube server flags", f.Name)
		}
	})
}

type flagRow struct {
	long  []string // names without "--"
	short string   // without "-"
	def   string
}

var (
	longFlag  = regexp.MustCompile("`--([a-z0-9-]+)`")
	shortFlag = regexp.MustCompile("`-([a-zA-Z])`")
)

// flagTable reads the first "| flag | default | meaning |" table after the
// heading.
func flagTable(t *testing.T, readme, heading string) []flagRow {
	t.Helper()
	_, section, ok := strings.Cut(readme, "\n"+heading+"\n")
	if !ok {
		t.Fatalf("no heading %q in the README", heading)
	}
	var rows []flagRow
	inTable := false
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "| flag | default |") {
			inTable = true
			continue
		}
		if !inTable || strings.HasPrefix(line, "|---") {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			t.Fatalf("README table row %q has fewer than three cells", line)
		}
		row := flagRow{def: strings.TrimSpace(cells[2])}
		for _, m := range longFlag.FindAllStringSubmatch(cells[1], -1) {
			row.long = append(row.long, m[1])
		}
		if m := shortFlag.FindStringSubmatch(cells[1]); m != nil {
			row.short = m[1]
		}
		if len(row.long) == 0 {
			t.Fatalf("README table row %q names no --flag", line)
		}
		rows = append(rows, row)
	}
	return rows
}

// singleLiteral is the text of a cell that is one `code` span and nothing
// else, without a <placeholder>.
func singleLiteral(cell string) (string, bool) {
	if len(cell) < 2 || cell[0] != '`' || cell[len(cell)-1] != '`' || strings.Count(cell, "`") != 2 || strings.Contains(cell, "<") {
		return "", false
	}
	return cell[1 : len(cell)-1], true
}

// Command sizes prints the longest functions (lines, declaration to closing
// brace) and the largest structs (fields; an embedded field counts one) of
// the non-test Go files under a directory, as Markdown tables: the measure
// issue reviews compare before and after a refactoring.
//
//	go run ./internal/tools/sizes [-n 10] [dir]
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// item is one function or struct, n its lines or fields.
type item struct {
	name string
	pos  string
	n    int
}

func main() {
	n := flag.Int("n", 10, "rows per table")
	flag.Parse()
	root := "."
	if flag.NArg() > 0 {
		root = flag.Arg(0)
	}
	fset := token.NewFileSet()
	var funcs, structs []item
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		pkg := filepath.Dir(rel)
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.FuncDecl:
				if x.Body == nil {
					return true
				}
				name := x.Name.Name
				if x.Recv != nil && len(x.Recv.List) > 0 {
					t := x.Recv.List[0].Type
					if s, ok := t.(*ast.StarExpr); ok {
						t = s.X
					}
					if id, ok := t.(*ast.Ident); ok {
						name = id.Name + "." + name
					}
				}
				a, b := fset.Position(x.Pos()), fset.Position(x.End())
				funcs = append(funcs, item{pkg + "." + name, fmt.Sprintf("%s:%d", rel, a.Line), b.Line - a.Line + 1})
			case *ast.TypeSpec:
				st, ok := x.Type.(*ast.StructType)
				if !ok {
					return true
				}
				nf := 0
				for _, fl := range st.Fields.List {
					if len(fl.Names) == 0 {
						nf++
					} else {
						nf += len(fl.Names)
					}
				}
				a := fset.Position(x.Pos())
				structs = append(structs, item{pkg + "." + x.Name.Name, fmt.Sprintf("%s:%d", rel, a.Line), nf})
			}
			return true
		})
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sizes:", err)
		os.Exit(1)
	}
	for _, l := range []struct {
		title string
		xs    []item
		unit  string
	}{{"functions", funcs, "lines"}, {"structs", structs, "fields"}} {
		sort.SliceStable(l.xs, func(i, j int) bool { return l.xs[i].n > l.xs[j].n })
		fmt.Printf("| %s | %s | at |\n|---|---:|---|\n", l.title, l.unit)
		for _, x := range l.xs[:min(*n, len(l.xs))] {
			fmt.Printf("| `%s` | %d | %s |\n", x.name, x.n, x.pos)
		}
		fmt.Println()
	}
}

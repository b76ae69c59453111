// Command harikube is a single-binary Kubernetes control plane.
package main

import (
	"os"

	"github.com/harikube/harikube/pkg/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args))
}

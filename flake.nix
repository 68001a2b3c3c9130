{
  # `nix develop`: Python with breed's dependencies, Snakemake and its cluster plugins, an MPI
  # and mpi4py; `nix build`: the breed package. The dependency lists are read from
  # pyproject.toml (the single list, as in pyproject.nix's template); `pypiToNix` only says
  # where each PyPI name lives in nixpkgs. tests/test_workflow.py checks that every dependency
  # of pyproject.toml is mapped, and CI parses this file (ci/nix-check.sh).
  description = "breed: on-line training of PDE surrogates steered by the Breed active-learning sampler";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      pyproject = builtins.fromTOML (builtins.readFile ./pyproject.toml);
      project = pyproject.project;

      # PEP 508 requirement -> normalised distribution name: "PyYAML>=6" -> "pyyaml".
      upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" "_" "." ];
      lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" "-" "-" ];
      reqName =
        spec:
        builtins.replaceStrings upper lower (
          builtins.head (builtins.match "[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*).*" spec)
        );

      # Where each PyPI distribution comes from: a python3Packages attribute (string), a
      # top-level package ({ pkgs = ...; }), or the two Slurm plugins built below from PyPI.
      pypiToNix = {
        numpy = "numpy";
        scipy = "scipy";
        pyzmq = "pyzmq";
        torch = "torch";
        pyyaml = "pyyaml";
        jsonschema = "jsonschema";
        pandas = "pandas";
        matplotlib = "matplotlib";
        tqdm = "tqdm";
        mpi4py = "mpi4py";
        snakemake = "snakemake";
        snakemake-executor-plugin-slurm = "snakemake-executor-plugin-slurm";
        snakemake-executor-plugin-cluster-generic = "snakemake-executor-plugin-cluster-generic";
        pytest = "pytest";
        pytest-timeout = "pytest-timeout";
        hypothesis = "hypothesis";
        tensorboard = "tensorboard";
        ruff = { pkgs = "ruff"; };
        mypy = "mypy";
        # The PyPI MPICH wheel: under Nix the MPI comes from nixpkgs (the one mpi4py links).
        mpich = { pkgs = "mpi"; };
      };

      optional = project.optional-dependencies;
      # `dev` only re-lists the other extras (breed[mpich,workflow,test,tensorboard]).
      groups = {
        runtime = map reqName project.dependencies;
        mpich = map reqName optional.mpich;
        workflow = map reqName optional.workflow;
        test = map reqName optional.test;
        tensorboard = map reqName optional.tensorboard;
      };
      allNames = builtins.concatLists (builtins.attrValues groups);

      systems = [ "x86_64-linux" "aarch64-linux" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system);

      pythonFor =
        pkgs:
        pkgs.python3.override {
          packageOverrides = pyself: pysuper: {
            # Not packaged in nixpkgs (the cluster-generic plugin is); pinned sdists from PyPI.
            snakemake-executor-plugin-slurm-jobstep = pyself.buildPythonPackage rec {
              pname = "snakemake_executor_plugin_slurm_jobstep";
              version = "0.6.1";
              pyproject = true;
              src = pyself.fetchPypi {
                inherit pname version;
                hash = "sha256-DtL+qojR1k813Ga0mQ8THT8VFzPt7OkNXpUt7A6Pf+s=";
              };
              build-system = [ pyself.poetry-core ];
              dependencies = with pyself; [
                snakemake-interface-common
                snakemake-interface-executor-plugins
              ];
              pythonRelaxDeps = true;
            };
            snakemake-executor-plugin-slurm = pyself.buildPythonPackage rec {
              pname = "snakemake_executor_plugin_slurm";
              version = "2.8.0";
              pyproject = true;
              src = pyself.fetchPypi {
                inherit pname version;
                hash = "sha256-l9kxKEsUUranr9LxttIALCeM56Xo9qmC3HdoiBfTA5k=";
              };
              build-system = [ pyself.hatchling ];
              dependencies = with pyself; [
                numpy
                pandas
                pyyaml
                throttler
                snakemake-executor-plugin-slurm-jobstep
                snakemake-interface-common
                snakemake-interface-executor-plugins
              ];
              pythonRelaxDeps = true;
            };
          };
        };

      # Python packages (from python3Packages) and top-level packages of some groups.
      resolve =
        pkgs: python: names:
        let
          entries = map (n: pypiToNix.${n}) names;
        in
        {
          python = ps: map (e: ps.${e}) (builtins.filter builtins.isString entries);
          tools = map (e: pkgs.${e.pkgs}) (builtins.filter builtins.isAttrs entries);
        };
    in
    {
      # Evaluable without nixpkgs (no fetching): what tests/test_workflow.py compares with
      # pyproject.toml.
      lib = {
        inherit pypiToNix groups;
        pypiNames = allNames;
        unmapped = builtins.filter (n: !(pypiToNix ? ${n})) allNames;
      };

      packages = forAllSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          python = pythonFor pkgs;
          runtime = resolve pkgs python groups.runtime;
        in
        {
          default = python.pkgs.buildPythonPackage {
            pname = project.name;
            version = project.version;
            pyproject = true;
            src = nixpkgs.lib.cleanSource ./.;
            build-system = with python.pkgs; [ setuptools wheel ];
            dependencies = runtime.python python.pkgs;
            pythonImportsCheck = [ "breed" ];
            meta.mainProgram = "breed";
          };
        }
      );

      devShells = forAllSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          python = pythonFor pkgs;
          everything = resolve pkgs python allNames;
        in
        {
          default = pkgs.mkShell {
            packages = [ (python.withPackages everything.python) ] ++ everything.tools;
            # The checkout itself is importable, as `pip install -e .` makes it in the README's
            # venv: the Snakemake workflow needs `import breed` (workflow/rules/common.smk).
            shellHook = ''
              export PYTHONPATH="$PWD/src''${PYTHONPATH:+:$PYTHONPATH}"
            '';
          };
        }
      );
    };
}

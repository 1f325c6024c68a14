import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, 'requirements.txt')) as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith('#')]

setup(
    name='lvae',
    version='0.1.0',
    description='An upper bound on the information rate-distortion function of images '
                '(Duan et al., ICIP 2023), in PyTorch',
    long_description=open(os.path.join(here, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['lvae', 'lvae.*']),
    package_data={'lvae': ['evaluation/*.json', 'weights/*.pt']},
    python_requires='>=3.9',
    install_requires=requirements,
    extras_require={'test': ['pytest', 'nbclient', 'nbformat', 'ipykernel', 'import-linter']},
)

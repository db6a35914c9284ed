from setuptools import find_packages, setup

setup(
    name="gagent",
    version="0.1.0",
    description="Stratum proxy for Bitcoin mining farms speaking the BTCAgent protocol upstream",
    long_description=open("README.rst").read() if __import__("os").path.exists("README.rst") else "",
    packages=find_packages(include=["gagent", "gagent.*"]),
    package_data={"gagent.status": ["*.html"]},
    python_requires=">=3.9",
    install_requires=["gevent>=21.1", "simplejson>=3.17", "ConfigArgParse>=1.5", "psutil>=5.8",
                      "prometheus-client>=0.16", "python-socks>=2.0"],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6.0", "trustme>=1.0",
                            "supervisor>=4.2", "selenium>=4.10", "pproxy>=2.7"]},
    entry_points={"console_scripts": [
        "gagent = gagent.entry:main",
        "gagent-sim = gagent.entry:demo",
    ]},
)
